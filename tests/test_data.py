import pickle
import urllib.error

import pytest
import torch
from conftest import CLASSES, write_cifar

import cifar_lightning.blocks.datasets as datasets
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError


def setup(**kwargs) -> ImageDataModule:
    datamodule = ImageDataModule(**{"batch_size": 16, **kwargs})
    datamodule.setup("fit")
    return datamodule


def test_cifar_batches_load_through_the_real_code_path(cifar_root):
    dm = setup(root=cifar_root, verify=False, val_size=30)
    train, val, test = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    assert (len(train), len(val), len(test)) == (170, 30, 50)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert dm.class_names == CLASSES and dm.num_classes == 10
    # pixel layout: the first test image's planes are the first 3072 bytes of the file, R then G then B
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="latin1")
    assert torch.equal(test.images[0].flatten(), torch.from_numpy(raw["data"][0]))
    assert test.labels.tolist() == raw["labels"]


def test_cifar100_loads_with_the_same_module(tmp_path):
    root = write_cifar(tmp_path, name="cifar100")
    dm = setup(source="cifar100", root=root, verify=False, val_size=20)
    assert dm.num_classes == 100 and dm.class_names[:2] == ["class00", "class01"]
    assert (len(dm.splits["train"]), len(dm.splits["test"])) == (180, 50)
    assert dm.splits["train"].labels.max() < 100


def test_split_is_disjoint_fixed_by_split_seed_and_covers_the_training_set(cifar_root):
    def split(seed):
        dm = setup(root=cifar_root, verify=False, val_size=50, split_seed=seed)
        return [{tuple(img.flatten()[:64].tolist()) for img in dm.splits[s].images} for s in ("train", "val")]

    train, val = split(0)
    assert not train & val and len(train) + len(val) == 200
    assert split(0) == [train, val] and split(1)[1] != val


def test_val_size_zero_trains_on_everything(cifar_root):
    dm = setup(root=cifar_root, verify=False, val_size=0)
    assert len(dm.splits["train"]) == 200 and "val" not in dm.splits and dm.val_dataloader() == []


def test_batches_are_uint8_slices_with_their_indices(cifar_root):
    dm = setup(root=cifar_root, verify=False, val_size=40)
    images, labels, indices = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    assert torch.equal(images, dm.splits["train"].images[indices])
    assert len(list(dm.train_dataloader())) == 160 // 16  # drop_last: every batch full
    val = list(dm.val_dataloader())
    assert sum(len(b[1]) for b in val) == 40


def test_verify_refuses_files_that_differ_from_the_official_release(cifar_root):
    with pytest.raises(UserError, match="official checksums.*data.verify=false"):
        setup(root=cifar_root, verify=True)


def test_missing_data_without_network_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as error:
        setup(root=tmp_path / "nothing")
    message = str(error.value)
    assert "nothing/cifar-10-batches-py" in message and "could not be downloaded" in message
    assert "\n" not in message  # one line: the entry points print it after "error: "
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message and "README.md" in message


def test_truncated_batch_file_is_a_clear_error(cifar_root):
    batch = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(UserError, match="data_batch_3 is not a readable CIFAR batch"):
        setup(root=cifar_root, verify=False)


def test_a_pickle_that_would_run_code_is_refused(cifar_root, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (cifar_root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(UserError, match="refusing"):
        setup(root=cifar_root, verify=False)
    assert not marker.exists()


def test_image_folder_tree_loads_with_class_names_from_folders(folder_root):
    dm = setup(source="folder", root=folder_root, val_size=6, batch_size=8)
    assert dm.class_names == ["cat", "dog", "frog"]
    assert len(dm.splits["train"]) == 30 and len(dm.splits["val"]) == 6 and len(dm.splits["test"]) == 12
    assert dm.splits["train"].images.shape[1:] == (3, 32, 32)  # 40x40 images resized
    assert sorted(dm.splits["test"].labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize(
    "layout, message",
    [
        (lambda root: None, "train does not exist"),
        (lambda root: (root / "train").mkdir(parents=True), "has no class folders"),
        (lambda root: (root / "train" / "cat").mkdir(parents=True), "class folders without images: cat"),
        (
            lambda root: (
                (root / "train" / "cat").mkdir(parents=True),
                (root / "train" / "cat" / "a.png").write_text("x"),
            ),
            "a.png: unreadable image",
        ),
    ],
)
def test_bad_image_folders_are_clear_errors(tmp_path, layout, message):
    layout(tmp_path)
    with pytest.raises(UserError, match=message):
        setup(source="folder", root=tmp_path, val_size=0)


def test_batch_larger_than_the_training_split_is_refused(cifar_root, tmp_path):
    """A cross-field check (schema.run_length), made once the data's sizes are known and before training."""
    from conftest import FAST, compose_train

    from cifar_lightning.tasks.train import train

    overrides = [*FAST, f"data.root={cifar_root}", "data.verify=false", "data.val_size=20", "batch_size=500"]
    with pytest.raises(UserError, match="batch_size=500 is larger than the training split"):
        train(compose_train(overrides, output_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_synthetic_data_is_ready_without_files():
    dm = setup(source="synthetic", val_size=200)
    assert (len(dm.splits["train"]), len(dm.splits["val"]), len(dm.splits["test"])) == (1800, 200, 500)


@pytest.mark.parametrize("cuda", [False, True])
def test_batches_are_pinned_where_a_gpu_would_receive_them(monkeypatch, cuda):
    """A copy from unpinned memory to a GPU waits for the GPU first (a host-device sync every batch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    datamodule = ImageDataModule(source="synthetic", val_size=100, batch_size=50)
    datamodule.setup("fit")
    assert datamodule.train_dataloader().pin_memory is cuda and datamodule.val_dataloader().pin_memory is cuda
