"""bertclf: fine-tune pretrained transformer encoders for text classification, then evaluate, predict,
serve and export them."""

__version__ = "0.1.0"

__all__ = ["Classifier", "TrainConfig", "train", "__version__"]


def __getattr__(name):  # lazy: `import bertclf` stays fast and torch-free until needed
    if name == "Classifier":
        from bertclf.inference.classifier import Classifier

        return Classifier
    if name == "TrainConfig":
        from bertclf.train.config import TrainConfig

        return TrainConfig
    if name == "train":  # one fine-tune, or two passes with --texts (bertclf/distill/self_train.py)
        from bertclf.distill.self_train import train

        return train
    raise AttributeError(name)
