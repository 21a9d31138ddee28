"""Networks: MobileNet v1, classifier feature encoder, partial-convolution inpainter, attention-gated attributor."""
