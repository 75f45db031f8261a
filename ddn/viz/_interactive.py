"""The small base class behind every interactive picture in ``ddn.viz``.

A picture owns a matplotlib ``Figure`` built without pyplot (so nothing is shown twice in a
notebook and nothing leaks in tests). ``update(**values)`` changes some of its parameters,
redraws, and returns the figure; ``interact(**sliders)`` wires ``update`` to ipywidgets.
"""
from __future__ import annotations

import numbers

__all__ = ["InteractiveFigure"]


class InteractiveFigure:
    """Base class: subclasses set ``defaults`` (a dict of parameters) and implement ``_draw``.

    ``self.values`` holds the current parameters; ``update(**values)`` merges new ones,
    redraws, and returns ``self.fig`` (so ``ipywidgets.interact(view.update, ...)`` displays
    it). Unknown parameter names raise ``TypeError`` naming the accepted ones.
    """

    defaults: dict = {}
    figsize = (9.0, 4.0)

    def __init__(self, **values):
        from matplotlib.figure import Figure

        self.values = dict(self.defaults)
        self._check(values)
        self.values.update(values)
        self.fig = Figure(figsize=self.figsize, layout="constrained")
        self._build()
        self._draw()

    def _check(self, values):
        unknown = set(values) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}.update got unknown parameter(s) "
                            f"{sorted(unknown)}; accepted: {sorted(self.defaults)}")

    def _build(self):
        """Create axes and artists once (optional; the default draws from scratch)."""

    def _draw(self):
        raise NotImplementedError

    def update(self, **values):
        """Set some parameters, redraw, and return the figure."""
        self._check(values)
        self.values.update(values)
        self._draw()
        return self.fig

    def interact(self, **sliders):
        """Wire ``update`` to ipywidgets sliders (``name=(lo, hi, step)`` or a widget); the
        figure is redrawn below the sliders on every change."""
        import ipywidgets

        self._check(sliders)
        widgets = {}
        for name, spec in sliders.items():
            value = self.values[name]
            if isinstance(spec, ipywidgets.Widget):
                widgets[name] = spec
            elif isinstance(spec, (list, dict)):
                widgets[name] = ipywidgets.Dropdown(options=spec, value=value, description=name)
            else:
                lo, hi, *step = spec
                # A slider clamps its value into [min, max] (and an IntSlider truncates it),
                # and interact then redraws with that value: a float parameter given an
                # int range, or a current value outside the range, would silently change
                # the picture the moment it is shown. Int sliders only for int parameters;
                # ranges are widened to include the current value.
                lo, hi = min(lo, value), max(hi, value)
                is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                if is_int and all(isinstance(s, numbers.Integral) for s in spec):
                    widgets[name] = ipywidgets.IntSlider(value=value, min=lo, max=hi,
                                                         step=step[0] if step else 1,
                                                         description=name)
                    continue
                widgets[name] = ipywidgets.FloatSlider(value=value, min=lo, max=hi,
                                                       step=step[0] if step else (hi - lo) / 100,
                                                       description=name, continuous_update=False)
        return ipywidgets.interact(self.update, **widgets)

    def _repr_png_(self):
        import io

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
