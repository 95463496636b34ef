"""Data: load ELPV or an ImageFolder tree into a :class:`Dataset`, the study's split, export.

A Dataset holds every image in memory as one uint8 array (``N x H x W`` for grayscale,
``N x H x W x 3`` for RGB) next to a metadata table with one row per image. Nothing is
re-decoded from PNG after loading.

A *pack* is one portable, lossless file of a Dataset (a zip of lossless WebP images, a metadata
table and checksums) for moving a data set to a machine without the ``elpv-dataset`` package or
network access, e.g. an air-gapped GPU server. Loading needs only numpy, pandas and Pillow and
gives the same arrays bit for bit; a damaged pack is refused whole, naming the file.

Command line::

    python -m fsfsl_utils.data export OUT [--seed 0] [--labels study] [--force]
    python -m fsfsl_utils.data pack OUT [--labels study] [--source elpv|FOLDER]

Modules, each importing only those before it: ``dataset`` (the Dataset, label policies), ``images``
(decoding one file), ``pack``, ``sources`` (ELPV, ImageFolder, packs), ``splits``, ``tree_export``,
``cli`` (the command line; ``python -m fsfsl_utils.data`` runs it).
"""

from .cli import main
from .dataset import (
                      LABEL_POLICIES,
                      META_COLUMNS,
                      DataError,
                      Dataset,
                      check_label_policy,
                      from_arrays,
                      make_meta,
                      pick_per_class,
)
from .images import GRAY_MODES, IMAGE_SUFFIXES, NOT_CLASSES, image_header, read_image, to_8bit
from .pack import PACK_FORMAT, PACK_SUFFIX, check_pack_name, is_pack, load_pack, read_pack_header, write_pack
from .sources import (
                      ELPV_MODULES,
                      MODULE_BLOCK,
                      STUDY_TRAIN_COUNTS,
                      STUDY_VAL_COUNTS,
                      class_counts_of,
                      class_names_of,
                      elpv_module_groups,
                      elpv_root,
                      load_elpv,
                      load_imagefolder,
                      load_source,
                      source_origin,
)
from .splits import GROUPED_TRIES, SPLIT_KINDS, grouped_split, label_subset, split, study_split
from .tree_export import EXPORT_ENTRIES, EXPORT_FORMAT, EXPORT_MARKER, check_earlier_export, export

__all__ = (
    "ELPV_MODULES", "EXPORT_ENTRIES", "EXPORT_FORMAT", "EXPORT_MARKER", "GRAY_MODES", "GROUPED_TRIES",
    "IMAGE_SUFFIXES", "LABEL_POLICIES", "META_COLUMNS", "MODULE_BLOCK", "NOT_CLASSES", "PACK_FORMAT",
    "PACK_SUFFIX", "SPLIT_KINDS", "STUDY_TRAIN_COUNTS", "STUDY_VAL_COUNTS", "DataError", "Dataset",
    "check_earlier_export", "check_label_policy", "check_pack_name", "class_counts_of", "class_names_of",
    "elpv_module_groups",
    "elpv_root", "export", "from_arrays", "grouped_split", "image_header", "is_pack", "label_subset",
    "load_elpv", "load_imagefolder", "load_pack", "load_source", "main", "make_meta", "pick_per_class",
    "read_image", "read_pack_header", "source_origin", "split", "study_split", "to_8bit", "write_pack",
)
