"""Release tools: the trigger-aware deployment gate and the fine-tuning data audit."""
