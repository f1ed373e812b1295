"""Pictures for people: label colours, mask overlays, training preview panels and Grad-CAM heat maps.

Used by training (preview panels), inference and the pages; imports nothing of training or inference."""
