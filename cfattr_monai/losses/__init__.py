"""Losses: partial-convolution inpainting loss and the counterfactual attribution loss."""
