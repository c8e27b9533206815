"""A module of the layer: where it was imported from shows where the layer is."""

WHERE = __file__
