from modules import sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers


def find_sampler_config(name):
    if name is None:
        return all_samplers[0]
    config = all_samplers_map.get(name)
    if config is None:
        for sampler in all_samplers:
            if name.lower() in [alias.lower() for alias in sampler.aliases]:
                return sampler
    return config


def create_sampler(name, model):
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"implementation missing for sampler {name!r}")
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
