"""The CPU named next to every figure: the model name, with family and model numbers when
the name alone does not say which generation it is."""
from iadet.machine import cpu_model

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\n" \
      "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"


def test_a_generic_name_gets_the_family_and_model_of_the_first_processor():
    assert cpu_model(AMD) == "AMD EPYC (family 26, model 2)"


def test_a_name_with_a_model_number_is_kept_as_it_is():
    assert cpu_model("model name\t: Intel(R) Xeon(R) Platinum 8488C\ncpu family\t: 6\nmodel\t: 143\n") == \
        "Intel(R) Xeon(R) Platinum 8488C"


def test_without_cpuinfo_the_platform_answers():
    assert cpu_model("") and cpu_model("flags\t: fpu\n")
