"""Thin command lines over library functions; `meshtrain` dispatches to them."""
