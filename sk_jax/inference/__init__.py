"""Stylizing: the Stylizer, its controls and the bundled generator."""
