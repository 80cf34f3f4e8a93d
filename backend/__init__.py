"""autoannotator: a Label Studio ML backend that pre-annotates faces and people with model ensembles.

Packages:
- ``backend.vision``: the vision core (model adapters, ensembles, alignment, descriptors, clustering).
  It never imports the service.
- ``backend.service``: the HTTP service (Label Studio formats, label configs, image fetching).
- ``backend.config``: every setting, read from the environment in one place.
"""
