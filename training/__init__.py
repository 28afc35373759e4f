"""LoRA fine-tuning of a target model on generated safety data (see issue 4)."""
