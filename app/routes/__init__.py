"""HTTP routes: parse, call a service, return (the work lives in ``app.serving``)."""
