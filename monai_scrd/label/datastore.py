"""The app's datastore: MONAI Label's local datastore, contained in the studies folder like ``/infer`` is.

MONAI Label 0.8.5's ``LocalDatastore`` resolves symbolic links and follows them wherever they lead: a link in the
studies folder to a file outside it is listed, served by ``GET /datastore/image``, overwritten by an upload of the same
id and deleted by ``DELETE /datastore/image``; an uploaded image id or label tag with ``/`` or ``..`` writes outside the
folder. :class:`ContainedDatastore` resolves every image and label path (symbolic links included) and:

* lists, serves and describes only files whose real path lies inside the studies folder (the others are treated as
  absent: ``GET /datastore/image`` answers 404, ``/datastore/image/info`` ``{}``, lists leave them out);
* writes and deletes only there: image ids and label tags must be plain names, and a destination that resolves outside
  the folder (a link) is refused (HTTP 400; deleting or updating an image that is not there: 404).
"""

from __future__ import annotations

import os
from typing import Any

from monailabel.datastore.local import LocalDatastore

from monai_scrd.data import is_inside
from monai_scrd.label.infer import http_error

__all__ = ["ContainedDatastore"]


class ContainedDatastore(LocalDatastore):
    """``LocalDatastore`` that reads, lists and writes only inside its folder (see the module docstring)."""

    def __init__(self, datastore_path: str, *args, **kwargs) -> None:
        self._root = os.path.realpath(datastore_path)
        super().__init__(datastore_path, *args, **kwargs)

    # ---------------------------------------------------------------------------------------------- containment
    def _contained(self, path: str) -> str:
        """The real path of ``path`` when it lies inside the studies folder, else ``""``."""
        if not isinstance(path, str) or not path or "\x00" in path:
            return ""
        real = os.path.realpath(path)
        return real if is_inside(real, self._root) else ""

    @staticmethod
    def _plain_name(value: Any, what: str) -> str:
        seps = {os.sep, "/", os.altsep} - {None}
        if (not isinstance(value, str) or not value.strip() or value in (".", "..") or "\x00" in value
                or any(s in value for s in seps)):
            raise http_error(400, f"{what} {value!r} is not a plain file name: the datastore writes only inside the studies folder")
        return value

    def _not_here(self, image_id: str) -> Exception:
        return http_error(404, f"image {image_id!r} is not in the studies folder (list them with GET /datastore/?output=all)")

    # ---------------------------------------------------------------------------------------------- reading
    def get_image_uri(self, image_id: str) -> str:
        return self._contained(super().get_image_uri(image_id))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        if not self.get_image_uri(label_id):
            return ""
        return self._contained(super().get_label_uri(label_id, label_tag))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        return super().get_image_info(image_id) if self.get_image_uri(image_id) else {}

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(label_id, label_tag) if self.get_label_uri(label_id, label_tag) else {}

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        return super().get_labels_by_image_id(image_id) if self.get_image_uri(image_id) else {}

    def list_images(self) -> list[str]:
        return [i for i in super().list_images() if self.get_image_uri(i)]

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        return [i for i in super().get_labeled_images(label_tag, labels) if self.get_image_uri(i)]

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        return [i for i in super().get_unlabeled_images(label_tag, labels) if self.get_image_uri(i)]

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        full = super().datalist(True)
        keep = [all(self._contained(v) for v in d.values()) for d in full]
        listed = full if full_path else super().datalist(False)
        return [d for d, k in zip(listed, keep) if k]

    def json(self):
        d = super().json()
        objects = d.get("objects")
        if isinstance(objects, dict):
            d["objects"] = {k: v for k, v in objects.items() if self.get_image_uri(k)}
        return d

    def status(self) -> dict[str, Any]:
        tags: dict = {}
        images = self.list_images()
        for image_id in images:
            for tag in super().get_labels_by_image_id(image_id):
                if self.get_label_uri(image_id, tag):
                    tags[tag] = tags.get(tag, 0) + 1
        return {"total": len(images), "completed": len(self.get_labeled_images()), "label_tags": tags}

    # ---------------------------------------------------------------------------------------------- writing
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        own_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = self._plain_name(image_id or own_id, "image id")
        dest = os.path.join(self._datastore.image_path(), self._filename(image_id, ext))
        if not self._contained(dest):  # e.g. a symbolic link of that name leading outside
            raise http_error(400, f"image {image_id!r}: {self._filename(image_id, ext)} does not lie inside the studies folder")
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        if not self.get_image_uri(image_id):
            raise self._not_here(image_id)
        super().remove_image(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        if not self.get_image_uri(image_id):
            raise self._not_here(image_id)
        return super().update_image_info(image_id, info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        if not self.get_image_uri(image_id):
            raise self._not_here(image_id)
        self._plain_name(label_tag, "label tag")
        _, ext = self._to_id(os.path.basename(label_filename))
        dest = os.path.join(self._datastore.label_path(label_tag), self._filename(image_id, ext))
        if not self._contained(dest):
            raise http_error(400, f"label {image_id!r} ({label_tag}) would not lie inside the studies folder")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if not self.get_label_uri(label_id, label_tag):
            raise http_error(404, f"label {label_id!r} ({label_tag}) is not in the studies folder")
        super().remove_label(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        if not self.get_label_uri(label_id, label_tag):
            raise http_error(404, f"label {label_id!r} ({label_tag}) is not in the studies folder")
        return super().update_label_info(label_id, label_tag, info)
