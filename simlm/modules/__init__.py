"""LightningModules of the training stages."""
