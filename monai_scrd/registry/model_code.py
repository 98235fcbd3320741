"""The registered SCRD model as an MLflow "model from code": MLflow runs this file to build the model when it loads
one, so no ``python_model.pkl`` is unpickled; :class:`~monai_scrd.registry.pyfunc.SCRDPyfuncModel` then reads the
safetensors weights and the JSON spec of the model's artifacts."""

import mlflow

from monai_scrd.registry.pyfunc import SCRDPyfuncModel

mlflow.models.set_model(SCRDPyfuncModel())
