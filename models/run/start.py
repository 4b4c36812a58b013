"""How every command starts: the data, the model, and its initial or saved weights."""
import os

from data import DataError, load_dataset
from models.config import ConfigError
from models.resnet_vae import ResNetVAE
from models.trainer import Trainer

from .weights import load_ndict


def get_data(cfg, processes):
    """``(train_x, test_x)`` for the settings ``cfg``, the same on every process."""
    train_x, test_x = load_dataset(cfg.problem, cfg.n_train, seed=cfg.seed)
    if cfg.n_batch > len(train_x):
        raise DataError(f"n_batch={cfg.n_batch} is larger than the {len(train_x)} training "
                        f"images; use a smaller n_batch or a larger n_train")
    if train_x.shape[1:] != cfg.model.shape_x:
        raise DataError(f"problem {cfg.problem!r} has images of shape {train_x.shape[1:]}, "
                        f"but the model's shape_x is {cfg.model.shape_x}")
    for name, images in (("training", train_x), ("test", test_x)):
        processes.check_identical(images, f"{name} images", "is CIFAR10_PATH the same "
                                  "data set on every machine?")
    return train_x, test_x


def build_model(cfg, draw_weights=True):
    """The `ResNetVAE` the settings ``cfg`` describe (its weights at zero unless drawn)."""
    return ResNetVAE(cfg.model, seed=cfg.seed, draw_weights=draw_weights)


def build_trainer(cfg, draw_weights=True):
    """The `Trainer` of the model the settings ``cfg`` describe."""
    return Trainer(build_model(cfg, draw_weights), cfg.conv_precision)


def initialise(trainer, cfg, processes, init_x=None):
    """Data-dependent init on ``init_x``, or weights from ``load_model_path`` (or both if
    incomplete), on rank 0, which then sends the parameters to the other ranks."""
    path, complete = cfg.load_model_path, cfg.load_model_complete
    if (path is None or not complete) and init_x is None:
        raise ConfigError("this command needs load_model_path=DIR and "
                          "load_model_complete=True")
    if processes.is_main and (path is None or not complete):
        for name in trainer.data_init(init_x, trainer.noise("init", 0, range(len(init_x)))):
            print(f"warning: a channel of {name} has std 0 on the init batch; "
                  f"skipped its data-dependent init")
    if processes.is_main and path is not None:
        path = os.path.join(path, "weights.ndict.tar.gz")
        print(f"Loading weights from {path}")
        missing = trainer.state.set_weights(load_ndict(path), complete=complete, source=path)
        if missing:
            print(f"warning: {len(missing)} parameters not in the file kept their init")
    for parameters in (trainer.state.params, trainer.state.avg_params):
        processes.broadcast_(parameters.buffer)
