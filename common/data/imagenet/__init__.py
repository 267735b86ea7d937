"""ImageNet (ILSVRC2012) for ResNet-50: JPEG folders or tfds TFRecords, MLPerf preprocessing, a manifest check.

What training, open/, bench/ and compliance/ use is exposed here; the preparation programs (`index`, the
command line in `__main__`, `archives`) are imported only by `python -m mlperf_submission.common.data.imagenet`.

Layouts (found automatically by `layout.detect_layout`):
  jpeg      SRC/train/<wnid>/*.JPEG, and either SRC/val/<wnid>/*.JPEG or SRC/val/*.JPEG with a labels
            file. Class index = position of the wnid in the sorted list of SRC/train class folders.
            Image files end in .JPEG/.jpeg/.jpg (any case); other files and names starting with a dot
            are ignored. Labels for a flat val/: SRC/val_labels.txt if present, else
            SRC/LOC_val_solution.csv. A line with a comma splits at its first comma, any other line on
            whitespace; the first field is the image's file name, with or without its extension; the
            first word after it is the wnid. Blank lines, lines starting with '#' and a header line
            whose first field is `ImageId` are skipped. So both `ILSVRC2012_val_00000001.JPEG n01751748`
            and Kaggle's `ILSVRC2012_val_00000001,n01751748 111 25 384 204 ...` work; the devkit's
            ILSVRC2012_validation_ground_truth.txt (numeric ILSVRC ids) is read by `archives` instead,
            which arranges the three official archives into val/<wnid>/.
  tfrecord  SRC/imagenet2012-{train,validation}.tfrecord-NNNNN-of-MMMMM as tensorflow-datasets writes
            them (under <data_dir>/imagenet2012/<version>/): tf.train.Example with `image` (JPEG bytes),
            `label` (int64, 0-999) and `file_name`. Split "val" reads the "validation" shards.

Training checks the data against its manifest and leaves out what the checker skipped:
    manifest = verify_manifest(root, "DIR/imagenet_manifest.json")
    data = ImageNet(root, "train", train_transform(), manifest=manifest)
"""

from .dataset import ImageNet
from .layout import (
    NUM_CLASSES,
    SPLITS,
    CorruptImagesError,
    ImageNetError,
    detect_layout,
)
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, verify_manifest
from .reference import (
    eval_resize_shape,
    random_crop_box,
    sample_distorted_bounding_box,
    tf1_resize_bilinear,
)
from .transforms import (
    MEAN,
    STD,
    eval_transform,
    normalise,
    train_transform,
)

__all__ = [
    "MANIFEST_FORMAT", "MANIFEST_NAME", "MEAN", "NUM_CLASSES", "SPLITS", "STD", "CorruptImagesError", "ImageNet",
    "ImageNetError", "detect_layout", "eval_resize_shape", "eval_transform", "normalise", "random_crop_box",
    "sample_distorted_bounding_box", "tf1_resize_bilinear", "train_transform", "verify_manifest",
]
