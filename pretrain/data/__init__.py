"""Datasets and image decoding: Fashion-MNIST, image folders / file lists, evaluation transforms."""

from pretrain.data.errors import DatasetError
from pretrain.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from pretrain.data.fashion_mnist import DatasetFilesError, FashionMNIST, load_fashion_mnist, read_idx
from pretrain.data.image_folder import ImageFolder
from pretrain.data.images import IMAGE_SUFFIXES, ImageDecodeError, demo_images, is_image_file, load_image, to_rgb
from pretrain.data.samples import Batch, Sample, SkippedImage, TensorBatches, collate_samples
from pretrain.data.transforms import eval_sizes, eval_transform

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "Batch",
    "DatasetError",
    "DatasetFilesError",
    "FashionMNIST",
    "ImageDecodeError",
    "ImageFolder",
    "Sample",
    "SkippedImage",
    "TensorBatches",
    "collate_samples",
    "demo_images",
    "eval_sizes",
    "eval_transform",
    "is_image_file",
    "load_fashion_mnist",
    "load_image",
    "read_idx",
    "to_rgb",
]
