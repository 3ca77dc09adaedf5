"""dense3d.api on bad input: one-line ConfigErrors before any model work."""
import pytest
import torch

from dense3d.api import DenseCaptionerRun
from dense3d.errors import ConfigError
from dense3d.structures import Sample


@pytest.mark.parametrize("samples", [Sample("scene"), None, 3])
def test_caption_many_of_a_non_list_is_a_config_error(samples):
    run = DenseCaptionerRun(torch.nn.Identity(), config={})
    with pytest.raises(ConfigError, match="samples.*a list of dense3d Samples"):
        run.caption_many(samples)
