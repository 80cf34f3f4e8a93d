"""The HTTP service: Label Studio's ML backend API, its label configs and formats, image fetching."""
