"""The worker's data: datasets on disk, sampling, transforms, masks, the loader and the
prefetch to the device (``pipeline`` is what the loop and evaluation call).
"""
