"""LoRA fine-tuning of a target model on generated safety data.

- :mod:`training.mix`: load safety and instruction data, build the deduplicated, shuffled mix
  with a validation split;
- :mod:`training.format`: prompt/response tokenization with the loss on response tokens only,
  and the plain prompt format as a chat template for serving;
- :mod:`training.lora`: :class:`~training.lora.TrainConfig` and
  :func:`~training.lora.train_lora` (transformers Trainer + PEFT, resumable checkpoints);
- :mod:`training.launch`: :func:`~training.launch.train_adapter` (mix + train one adapter) and
  its entry point under ``accelerate launch`` / ``torchrun``;
- :mod:`training.cli`: the ``data-advisor train`` command.

Layer: uses tools/ only, never the graph, the nodes, evaluation or the experiment; the
:mod:`experiment` package above runs it.
"""
