"""Training stages (SFT, DPO, WRPO) on trl and DeepSpeed."""
