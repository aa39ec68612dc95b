"""From the bytes of a request to checked values: JSON and multipart bodies (bounded while read), the
pydantic-to-400 mapping that names every failing param, uploaded images, and image_url fetches."""
