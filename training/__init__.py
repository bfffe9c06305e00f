"""Stage recipes that train the omni model (DeepSpeed, torchrun), one recipe per stage."""
