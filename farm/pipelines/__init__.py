"""One file per diffusers pipeline the farm can render with; each holds a renderer class
(see `farm.render` for the interface)."""
