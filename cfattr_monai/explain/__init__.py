"""Attribution baselines: Grad-CAM, gradient saliency, the iterative counterfactual method."""
