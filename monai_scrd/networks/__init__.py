from .scrd import SCRD
from .student import OneClassBottleneck, ScaleAdaptationHead, StudentDecoder
from .teacher import BACKBONES, TeacherEncoder, efficientnet_lite_weights_path

__all__ = [
    "SCRD",
    "TeacherEncoder",
    "BACKBONES",
    "efficientnet_lite_weights_path",
    "OneClassBottleneck",
    "StudentDecoder",
    "ScaleAdaptationHead",
]
