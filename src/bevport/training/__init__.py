"""Training the built-in demo weights on bevport's synthetic scenes (torch; never imported by export or runtime).

`centerpoint` holds the CenterPoint objective (Gaussian heatmap targets, focal loss, L1 box regression) as mmdet3d's
CenterHead computes it; `demo` caches each training frame's inputs, trains the recipe's `train.trained` subset of the
network and writes those tensors to the file `bevport synth-ckpt --trained` composes into a full checkpoint.
"""
