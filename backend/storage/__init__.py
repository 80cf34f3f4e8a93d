"""Persistent state of the backend: every predicted face and the project-wide identities.

The service uses it; the vision core (backend.vision) does not know it exists.
"""
from .faces import AnnotatedFace, FaceStore, NewFace, ProjectFaces, display_id
from .identities import cluster_project

__all__ = ["AnnotatedFace", "FaceStore", "NewFace", "ProjectFaces", "cluster_project", "display_id"]
