"""One construct per unit; each owns its resources and exposes them as attributes."""
