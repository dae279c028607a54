"""gwc: compile OpenAPI + x-gateway into an NGINX/OpenResty gateway."""

__version__ = "0.1.0"
