_instruments_kaygraph = ("kaygraph >= 0.3",)
_instruments_pocketflow = ("pocketflow >= 0.0.3",)
_instruments = _instruments_kaygraph + _instruments_pocketflow
