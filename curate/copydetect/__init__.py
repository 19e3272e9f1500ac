"""Copy detection, SSCD-style (Pizzi et al., CVPR 2022), one small module per idea.

- :mod:`.hashes`: perceptual hashes (pHash, dHash) and Hamming-radius pairs through a faiss binary index.
- :mod:`.local`: RootSIFT local features of an image (and of its mirror), the weight-free copy descriptor.
- :mod:`.candidates`: candidate pairs by local-descriptor votes (faiss), or by a global descriptor's kNN.
- :mod:`.verify`: geometric (affine RANSAC) plus photometric verification of a candidate pair.
- :mod:`.descriptor`: the SSCD architecture (ResNet-50 trunk, GeM p = 3, linear 512, L2) and checkpoints.
- :mod:`.score_norm`: SSCD score normalisation as one extra descriptor dimension.
- :mod:`.augment`: the SSCD augmentation set (overlays, crops, rotations, JPEG, mixup/cutmix).
- :mod:`.groups`: union-find, keep rule, group-wide decontamination.
- :mod:`.features`: per-partition feature files the dedup stage reads.
- :mod:`.pipeline`: the ``duplicates`` table from all of the above.
- :mod:`.steps`: the same table as the dedup stage's steps, each task one or two partitions' features.
- :mod:`.stage`: the single-process stage (the reference the steps are tested against).
"""
