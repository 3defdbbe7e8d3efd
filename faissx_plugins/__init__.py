"""The built-in index families, each a plugin registered under the ``faissx.plugins`` group."""
