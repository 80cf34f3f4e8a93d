"""Persistent state of the backend: every predicted face and the project-wide identities.

The service uses it; the vision core (backend.vision) does not know it exists.
"""
from .faces import AnnotatedFace, Assignment, FaceStore, NewFace, ProjectFaces, display_id
from .identities import cluster_project
from .naming import batch_identity_names, project_identities

__all__ = ["AnnotatedFace", "Assignment", "FaceStore", "NewFace", "ProjectFaces", "batch_identity_names", "cluster_project", "display_id",
           "project_identities"]
