from .transforms import ToGrayscaleChannels, ToGrayscaleChannelsd, preprocessing_transforms

__all__ = ["ToGrayscaleChannels", "ToGrayscaleChannelsd", "preprocessing_transforms"]
