"""Datasets and image decoding: Fashion-MNIST, image folders / file lists, evaluation transforms."""

from dinolab.pretrain.data.errors import DatasetError
from dinolab.pretrain.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from dinolab.pretrain.data.fashion_mnist import DatasetFilesError, FashionMNIST, load_fashion_mnist, read_idx
from dinolab.pretrain.data.image_folder import ImageFolder
from dinolab.pretrain.data.images import IMAGE_SUFFIXES, ImageDecodeError, demo_images, is_image_file, load_image, to_rgb
from dinolab.pretrain.data.samples import Batch, Sample, SkippedImage, TensorBatches, collate_samples
from dinolab.pretrain.data.transforms import eval_sizes, eval_transform

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
