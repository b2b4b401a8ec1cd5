"""Small analytic and random models for tests, benchmarks and the 2-D lab (no downloads)."""

# Overrides that make a run a few seconds of CPU whatever its guidance family: a small hash grid (the Stable
# Diffusion profile's 16-level 2^19 grid is 16 M parameters, sized for a GPU), few samples, tiny renders, the NeRF
# stage alone (the prior's profile adds a 150-step DMTet stage; tests of two stages ask for them).
SMALL_RUN = ["stages=[nerf]", "geometry.grid.n_levels=6", "geometry.grid.log2_hashmap_size=15", "camera.resolution=[16]",
             "camera.resolution_milestones=[]", "camera.batch_size=1", "trainer.preview_resolution=16",
             "trainer.preview_views=4"]
