package dump

import "errors"

// ErrNotObject reports a config dump that is not a JSON object.
var ErrNotObject = errors.New("config dump is not a JSON object")
