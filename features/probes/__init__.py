"""Dense linear probes on frozen patch tokens: monocular depth and semantic segmentation (DINOv2 §7.4)."""
