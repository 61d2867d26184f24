"""Dataset loading and prompt normalisation for the prepare stage."""
