"""First-party datasets: CEDAR AND, IAM, a generic writer-labelled image folder, and synthetic handwriting.

Each returns writer-disjoint in-memory splits (:class:`hvkit.api.Split`) with ink bright on a
dark background; :mod:`.pairs` holds the SSL-HV labelled-writer and pair protocol.
"""

from hvkit.api import hookimpl

from .cedar_and import cedar_and
from .iam import iam
from .image_folder import image_folder
from .synthetic import synthetic_handwriting


@hookimpl
def register_datasets(register):
    register("cedar_and", cedar_and)
    register("iam", iam)
    register("image_folder", image_folder)
    register("synthetic_handwriting", synthetic_handwriting)
