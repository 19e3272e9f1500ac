"""Pictures of what a backbone sees: attention maps, PCA of patch features, patch matches."""
