"""Vision core: everything that turns pixels into boxes, landmarks and identities.

Nothing here knows about HTTP or Label Studio.
"""
