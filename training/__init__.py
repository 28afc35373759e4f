"""LoRA fine-tuning of a target model on generated safety data.

- :mod:`training.mix`: load safety and instruction data, build the deduplicated, shuffled mix
  with a validation split;
- :mod:`training.format`: prompt/response tokenization with the loss on response tokens only;
- :mod:`training.lora`: :class:`~training.lora.TrainConfig` and
  :func:`~training.lora.train_lora` (transformers Trainer + PEFT, resumable checkpoints).
"""
