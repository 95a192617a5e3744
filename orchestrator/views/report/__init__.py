"""The morning report: ``facts`` (what one night's state and events say), ``advice`` (the
verdict and the next step in words), ``sections`` (the Markdown per night), ``markdown``
(tables, ``--set`` args) and ``write`` (the file, the plots beside it, ``hjepa-night report``)."""
