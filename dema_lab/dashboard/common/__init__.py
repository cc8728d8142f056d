"""What every dashboard page shares: reading a store for views (data), the HoloViews views, URL
sync and the page template."""
