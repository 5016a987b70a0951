"""The lazy tiled inference engine: any image size, exact seams, bounded memory.

:func:`~.restore.restore_lazy` turns an image (numpy, dask, zarr, TIFF, OME-Zarr) into a dask
array whose chunks are restored tiles: nothing is computed until a chunk is read (napari shows
only what is on screen), and :func:`napari_decrappify.io.write_ome_zarr` streams it to disk.

Modules, one concern each:

- :mod:`.geometry`: tiles, halos, reflection and alignment (pure arithmetic).
- :mod:`.halo`: the tolerance halo, measured on real images and recorded in the model: the
  default halo (``exact=True``: the receptive field).
- :mod:`.memory`: what a window costs in memory; the largest tile that fits the bound.
- :mod:`.registry`: the one cache of loaded models, the models dask graphs refer to
  (:class:`~.registry.ModelRef`), and their device workers.
- :mod:`.device`: :class:`~.device.DeviceWorker`, the one thread that runs a model's network
  on a device (batching, precision, out-of-memory fallback, test-time augmentation).
- :mod:`.graph`: the dask graph (one task per output tile), its plan and progress records.
- :mod:`.restore`: the entry points (``restore_lazy``, ``restore_image``, ``restore``) and
  the whole-plane reference (``restore_whole``).
- :mod:`.distributed`: dask.distributed helpers (active Client, running on a Client with
  progress and cancel, choosing a scheduler), also used by :mod:`napari_decrappify.io`.

:mod:`napari_decrappify.tiling` re-exports the public names under their former home. This
package's ``__init__`` imports nothing, so that :mod:`napari_decrappify.io` can use
:mod:`.distributed` without importing the engine.
"""
