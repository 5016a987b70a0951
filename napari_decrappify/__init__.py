"""napari-decrappify: crappify, then decrappify.

Headless API (no napari or Qt is imported by this package's core)::

    import napari_decrappify as nd
    model = nd.load_model("em-4x")
    restored = nd.restore(image, model, axes="ZYX")      # lazy dask array
"""

__version__ = "0.1.0"
