"""Promptable segmentation: prompts (points, boxes, the previous mask) in scan coordinates, their
encoding as extra input channels on the network grid, the simulated user that trains and scores a
promptable model, and the interactive session (`medseg.interactive.session`)."""
